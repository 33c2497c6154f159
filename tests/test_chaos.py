"""A seeded chaos run (tests/chaos.py) at a small size: 15,000 real trades over 15 s while the
stream drops, stalls and switches, the recorder is stopped and restarted, REST fails in five
ways and the disk is slow. ``bench/chaos.py`` runs the same for minutes."""

from __future__ import annotations

import itertools
from collections import Counter

import orjson
from chaos import KINDS, extend_tape, plan_faults, run_chaos
from conftest import UNIT

from recorder.backfill import NOT_SERVED

SEED, SECONDS, TRADES = 1, 15.0, 15_000


def test_the_schedule_is_fixed_by_the_seed_and_covers_every_fault():
    planned = Counter(f.kind for f in plan_faults(SEED, SECONDS))
    assert planned == {
        "drop": 2,
        "stall": 2,
        "server_shutdown": 2,
        "restart": 3,
        "rest_500": 1,
        "rest_429": 1,
        "rest_hang": 1,
        "rest_garbage": 1,
        "rest_trickle": 1,
        "slow_disk": 2,
    }
    assert set(planned) == set(KINDS)
    assert plan_faults(SEED, SECONDS) == plan_faults(SEED, SECONDS)
    assert plan_faults(SEED + 1, SECONDS) != plan_faults(SEED, SECONDS)


def test_every_servable_id_is_stored_once_through_chaos(tmp_path, frames_2024):
    fig = run_chaos(tmp_path, frames_2024[:TRADES], SEED, SECONDS, time_scale=UNIT)
    # Every planned fault was injected (some later than planned, clear of the held-back
    # REST-only hole), and every stop ended run() well inside systemd's patience.
    assert (
        fig["faults"]
        == fig["faults_planned"]
        == Counter(f.kind for f in plan_faults(SEED, SECONDS))
    )
    assert fig["restarts"] == 3 and len(fig["shutdowns"]) == 4
    assert fig["longest_shutdown"] < 5  # seconds, the bound for SIGTERM
    lost, kept = fig["holes"]
    assert (lost.streamed, kept.streamed) == (False, True)
    assert (lost.first_id, lost.size, kept.first_id, kept.size) == (
        3735686970,
        1_991,  # more than a REST page: REST answers fromId with ids past the page
        3735693315,
        19,
    )
    # Exactly once: every source id but the lost hole, no id twice (files and views), and
    # field for field as Binance sent it (REST-filled rows lack only the stream's fields).
    assert fig["trades_expected"] == TRADES - lost.size == 13_009
    assert fig["trades_stored"] == fig["rows_stored"] == 13_009
    assert (fig["missing_ids"], fig["unexpected_ids"], fig["stored_twice"]) == (0, 0, 0)
    assert fig["fields_match"]
    assert (fig["view_rows"], fig["view_distinct"]) == (13_009, 13_009)
    # The lost hole, and nothing else, is a gap: REST truly could not serve it. The
    # REST-only hole was delivered by the stream, so it is stored, not a gap.
    assert fig["gaps_recorded"] == 1
    assert [(g["first_id"], g["last_id"], g["reason"], g["unservable"]) for g in fig["gaps"]] == [
        (lost.first_id, lost.last_id, NOT_SERVED, True)
    ]
    assert fig["gaps"][0]["times_bracket"]
    # The faults did bite: trades missed while the recorder was down were filled from REST,
    # both connections of a switch delivered (one copy kept), stalls were detected.
    assert fig["backfilled"] > 0 and fig["duplicates_dropped"] > 0
    assert fig["stats"]["dead_connections"] >= 1 and fig["stats"]["switch_serverShutdown"] >= 1


def test_a_longer_tape_keeps_ids_consecutive_and_times_increasing(frames_2024):
    n = 2 * len(frames_2024) + 5
    tape = extend_tape(frames_2024, n)
    assert len(tape) == n and tape[: len(frames_2024)] == frames_2024
    data = [orjson.loads(f)["data"] for f in tape]
    ids, times = [d["t"] for d in data], [d["T"] for d in data]
    assert ids == list(range(ids[0], ids[0] + n))
    assert all(a <= b for a, b in itertools.pairwise(times))
    # The next repetition starts 1 s after the last trade; every other field is the source's.
    assert times[len(frames_2024)] - times[len(frames_2024) - 1] == 1000
    src, rep = orjson.loads(frames_2024[7])["data"], data[len(frames_2024) + 7]
    assert {k: v for k, v in rep.items() if k not in {"t", "T", "E"}} == {
        k: v for k, v in src.items() if k not in {"t", "T", "E"}
    }
    assert rep["E"] - src["E"] == rep["T"] - src["T"] == times[len(frames_2024)] - times[0]
