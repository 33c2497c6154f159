"""Windows built as tasks of about a day on an executor: the same tables, bit for bit, as one
sequential scan (``build_windows``), whatever the sizes, the range and the task length."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from synth import tape, write_recorded_gap, write_store

from engine.executors import LocalExecutor
from engine.scan import open_store
from engine.windows import (
    assemble,
    build_span,
    build_windows,
    build_windows_with,
    span_tasks,
)

DAY = 86_400_000
HOUR = 3_600_000
T0 = 1_723_075_200_000  # 2024-08-08 00:00 UTC
SIZES = {
    "20s,1m,1h": [20_000, 60_000, HOUR],
    "7s": [7_000],  # does not divide a day
    "7s,14s,20s,13m": [7_000, 14_000, 20_000, 780_000],  # 14 s rolled up from 7 s
}
RANGES = {
    "stored": (None, None),
    "odd ms": (T0 + 6 * HOUR + 1_234, T0 + 4 * DAY + 5_000),
    "from": (T0 + DAY + 17, None),
}
# Where the store's trades are missing (UTC ms).
INSIDE_DAY = T0 + DAY + 10 * HOUR  # trades missing for 5 minutes in the middle of 08-09
ACROSS_MIDNIGHT = T0 + DAY  # trades missing from 90 s before to 90 s after 08-09 00:00
RECORDED = (T0 + 3 * DAY + 5 * HOUR + 1_000, T0 + 3 * DAY + 5 * HOUR + 31_000)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """08-08 from 06:00, 08-09, no trades on 08-10 (and 1000 ids missing across it), 08-11,
    08-12 until 12:00; an id gap inside 08-09, one across its midnight, one recorded gap."""
    root = tmp_path_factory.mktemp("tasks")
    t = pl.concat(
        [
            tape(T0 + 6 * HOUR, 18 * 3600, 0.2, seed=1),
            tape(T0 + DAY, 24 * 3600, 0.2, seed=2),
            tape(T0 + 3 * DAY, 24 * 3600, 0.2, seed=3),
            tape(T0 + 4 * DAY, 12 * 3600, 0.2, seed=4),
        ]
    )
    ms = pl.col("trade_time").dt.epoch("ms")
    t = (
        t.with_columns(
            trade_id=pl.int_range(1, t.height + 1, dtype=pl.Int64)
            + pl.when(ms >= T0 + 3 * DAY).then(1000).otherwise(0)
        )
        .filter(~ms.is_between(INSIDE_DAY, INSIDE_DAY + 300_000, closed="left"))
        .filter(~ms.is_between(ACROSS_MIDNIGHT - 90_000, ACROSS_MIDNIGHT + 90_000, closed="left"))
    )
    write_store(root, "SIMUSDT", t)
    write_recorded_gap(root, "SIMUSDT", *RECORDED)
    return root


def assert_same(got: dict[int, pl.DataFrame], ref: dict[int, pl.DataFrame]) -> None:
    assert list(got) == list(ref)
    for every in ref:
        assert ref[every].height > 0
        assert_frame_equal(got[every], ref[every], check_exact=True)


def test_tasks_are_utc_days_when_every_size_divides_a_day(store):
    index = open_store(store, "SIMUSDT")
    tasks = span_tasks(index, SIZES["20s,1m,1h"])
    edges = [T0 + 6 * HOUR, *(T0 + d * DAY for d in range(1, 5)), T0 + 4 * DAY + 12 * HOUR]
    assert [(t.lo_ms, t.hi_ms) for t in tasks] == list(itertools.pairwise(edges))
    assert [t.name for t in tasks] == [f"SIMUSDT 2024-08-{d:02}" for d in range(8, 13)]
    two = span_tasks(index, SIZES["20s,1m,1h"], days=2)
    assert [t.name for t in two] == [
        "SIMUSDT 2024-08-08..2024-08-09",
        "SIMUSDT 2024-08-10..2024-08-11",
        "SIMUSDT 2024-08-12",
    ]
    assert pickle.loads(pickle.dumps(tasks[1])) == tasks[1]  # crosses to a worker process


def test_boundaries_move_to_a_multiple_of_every_size(store):
    """7 s does not divide a day: each boundary is the first multiple of 7 s and 20 s (140 s)
    at or after a midnight, so no window of either size straddles two tasks."""
    tasks = span_tasks(open_store(store, "SIMUSDT"), [7_000, 20_000])
    inner = [t.lo_ms for t in tasks[1:]]
    midnights = [T0 + d * DAY for d in range(1, 5)]
    assert [b % 140_000 for b in inner] == [0] * 4
    assert all(0 <= b - m < 140_000 for b, m in zip(inner, midnights, strict=True))
    assert [t.name for t in tasks] == [f"SIMUSDT 2024-08-{d:02}" for d in range(8, 13)]


@pytest.mark.parametrize("days", [1, 2])
@pytest.mark.parametrize("span", list(RANGES), ids=str)
@pytest.mark.parametrize("sizes", list(SIZES), ids=str)
def test_tasks_give_the_windows_of_one_scan(store, sizes, span, days):
    index = open_store(store, "SIMUSDT")
    start, end = RANGES[span]
    ref = build_windows(index, SIZES[sizes], start, end)
    assert_same(
        build_windows_with(LocalExecutor(), index, SIZES[sizes], start, end, days=days), ref
    )


def test_gaps_inside_and_between_tasks_are_flagged(store):
    """Not an empty agreement: the one-day tasks see every gap, including the one across a
    task boundary and the one across a task without trades."""
    index = open_store(store, "SIMUSDT")
    seen = []
    w = build_windows_with(LocalExecutor(), index, [HOUR], progress=lambda *a: seen.append(a))
    flagged = w[HOUR].filter("gap")["window_start"].dt.epoch("ms").to_list()
    assert T0 + DAY - HOUR in flagged and T0 + DAY in flagged  # across 08-09 00:00
    assert INSIDE_DAY in flagged
    assert RECORDED[0] // HOUR * HOUR in flagged
    # 08-10 held no trades: its hours sit between the last id before and the first after.
    assert all(T0 + 2 * DAY + h * HOUR in flagged for h in range(24))
    assert seen[-1] == (5, 5)


def test_a_process_pool_gives_the_same_windows(store):
    index = open_store(store, "SIMUSDT")
    sizes = SIZES["7s,14s,20s,13m"]
    with LocalExecutor(workers=2) as pool:
        got = build_windows_with(pool, index, sizes)
    assert_same(got, build_windows(index, sizes))


def test_assemble_refuses_parts_of_another_build(store):
    index = open_store(store, "SIMUSDT")
    tasks = span_tasks(index, [60_000])
    parts = [build_span(t) for t in tasks]
    assert_same(assemble(index, [60_000], None, None, parts), build_windows(index, [60_000]))
    with pytest.raises(ValueError, match="not the results of this build"):
        assemble(index, [60_000], None, None, parts[:2] + parts[3:])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lo=st.integers(0, 4 * DAY + 12 * HOUR - 1),
    length=st.integers(1, 3 * DAY),
    fine_s=st.sampled_from([1, 3, 5, 7, 20]),
    factors=st.lists(st.sampled_from([2, 3, 12, 60, 180]), max_size=2),
    # Sizes that do not divide a day or span several (their boundaries move), or do.
    other_s=st.sampled_from([7, 11, 13, 45, 780, 5 * 3600, 2 * 86_400]),
    days=st.integers(1, 3),
)
def test_any_range_and_sizes_give_the_windows_of_one_scan(
    store, lo, length, fine_s, factors, other_s, days
):
    index = open_store(store, "SIMUSDT")
    sizes = [fine_s * 1000, *(fine_s * 1000 * f for f in factors), other_s * 1000]
    start, end = T0 + lo, T0 + lo + length
    ref = build_windows(index, sizes, start, end)
    assert_same(build_windows_with(LocalExecutor(), index, sizes, start, end, days=days), ref)
