"""The pure backfill policy: what to fetch, what a reply means, when to give up."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.backfill import (
    NOT_SERVED,
    REFUSED,
    Request,
    SymbolBackfill,
    Wait,
    backoff_delays,
)
from recorder.tracker import Accept, IdTracker, Missing

T0 = 1_723_161_255_000  # UTC ms of id 0 in these tapes; one trade every 10 ms
NOW_MS = T0 + 10_000_000


def t(i: int) -> int:
    return T0 + 10 * i


def item(i: int, **kw) -> dict:
    return {"id": i, "price": "61837.63", "qty": "0.02", "quoteQty": "1236.75", "time": t(i),
            "isBuyerMaker": True, "isBestMatch": True, **kw}  # fmt: skip


def policy(tracker: IdTracker) -> SymbolBackfill:
    return SymbolBackfill(
        "ETHUSDT", tracker, limit=10, max_skew_ms=60_000,
        delays=lambda: backoff_delays(0.1, 1.0, random.Random(1)),
    )  # fmt: skip


def gap_policy() -> tuple[SymbolBackfill, Request]:
    """Ids 105..109 missing between stored 104 and 110."""
    tr = IdTracker(104, t(104))
    assert tr.accept(110, t(110)) == (Accept.NEW, Missing(105, 109, t(104), t(110)))
    bf = policy(tr)
    req = bf.next_step(0.0, NOW_MS)
    assert isinstance(req, Request)
    assert (req.from_id, req.limit, req.gap, req.lo_time) == (105, 10, tr.missing[0], t(104))
    return bf, req


def ids(frames) -> list[int]:
    return [f.trade_id for f in frames]


# reply, stored ids, rejected (count), gaps as (first, last), usable
CASES = {
    "whole gap and beyond": ([item(i) for i in range(105, 115)], list(range(105, 115)), 0, [], True),
    "REST starts late: the head is not served": (
        [item(i) for i in range(107, 112)], list(range(107, 112)), 0, [(105, 106)], True,
    ),
    "empty reply: none served": ([], [], 0, [(105, 109)], True),
    "another symbol's ids and prices": (
        [item(3_000_000_000 + i, price="99000.1") for i in range(50)], [], 50, [], False,
    ),
    "out of order: not a truthful page": ([item(105), item(107), item(106), item(108)], [], 1, [], False),
    "jumps ahead, then back": ([item(114), *(item(i) for i in range(105, 110))], [], 1, [], False),
    "time before the neighbour: served, refused": ([item(105, time=t(104) - 1), item(106)], [106], 1, [], True),
    "time after the neighbour inside the gap": (
        [item(105), item(106, time=t(110) + 1), item(107)], [105, 107], 1, [], True,
    ),
    "times going backwards": ([item(105), item(106, time=t(105) - 1)], [], 1, [], False),
    "a trade dated decades ahead": ([item(105), item(106, time=4_000_000_000_000)], [105], 1, [], True),
    "not an object, no id": (["x", {"id": "105"}, item(105)], [105], 2, [], True),
    "id below the request": ([item(104), item(105)], [105], 1, [], True),
    # REST answers fromId with the next ids it has: past a hole of the whole gap and more than
    # a page, the reply runs on after the gap's end (ids the stream delivered): "not served".
    "a hole longer than a page": ([item(i) for i in range(110, 120)], list(range(110, 120)), 0, [(105, 109)], True),
    "past gap.last + limit": ([item(120)], [], 1, [], False),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_judge_a_reply(name):
    reply, stored, rejected, gaps, usable = CASES[name]
    bf, req = gap_policy()
    v = bf.judge(req, reply, NOW_MS * 1000)
    assert (ids(v.store), len(v.rejects), [(g.first, g.last) for g in v.gaps], v.usable) == (
        stored,
        rejected,
        gaps,
        usable,
    )
    if gaps:
        assert all((g.after_time, g.before_time) == (t(104), t(110)) for g in v.gaps)
    if not usable:  # nothing trusted: the tracker is untouched
        assert bf.tracker.missing == [Missing(105, 109, t(104), t(110))]


def test_served_but_refused_ids_are_told_apart_from_ids_not_served():
    bf, req = gap_policy()
    reply = [item(106, time=t(104) - 1), item(107, time=t(110) + 5), item(108), item(109)]
    v = bf.judge(req, reply, NOW_MS * 1000)
    assert ids(v.store) == [108, 109]
    assert [(g.first, g.last) for g in v.gaps] == [(105, 105)]  # REST answered from 106 on
    assert [(g.first, g.last) for g in v.refused] == [(106, 107)]  # it served them: refused
    for f in v.store:  # the caller ingests what is stored
        bf.tracker.accept(f.trade_id, f.trade_time)
    assert bf.tracker.missing == []
    assert NOT_SERVED != REFUSED


def test_a_fill_brackets_the_pieces_it_leaves_with_its_own_time():
    tr = IdTracker(104, t(104))
    tr.accept(110, t(110))
    assert tr.accept(107, t(107)) == (Accept.FILL, None)
    assert tr.missing == [Missing(105, 106, t(104), t(107)), Missing(108, 109, t(107), t(110))]
    # Giving up keeps the brackets it finds.
    assert tr.give_up(105, 109) == [
        *tr.missing[:0],
        Missing(105, 106, t(104), t(107)),
        Missing(108, 109, t(107), t(110)),
    ]


def test_catch_up_ends_with_a_short_page():
    tr = IdTracker(100, t(100))
    bf = policy(tr)
    assert bf.next_step(0.0, NOW_MS) is None  # nothing missing, no catch-up asked
    bf.request_catchup()
    req = bf.next_step(0.0, NOW_MS)
    assert isinstance(req, Request) and (req.from_id, req.gap, req.lo_time) == (101, None, t(100))
    v = bf.judge(req, [item(i) for i in range(101, 111)], NOW_MS * 1000)
    assert ids(v.store) == list(range(101, 111)) and bf.catchup  # a full page: maybe more
    for f in v.store:
        tr.accept(f.trade_id, f.trade_time)
    req = bf.next_step(0.0, NOW_MS)
    assert isinstance(req, Request) and req.from_id == 111
    v = bf.judge(req, [item(111), item(112)], NOW_MS * 1000)
    assert ids(v.store) == [111, 112] and not bf.catchup
    for f in v.store:
        tr.accept(f.trade_id, f.trade_time)
    assert bf.next_step(0.0, NOW_MS) is None


def test_failures_back_off_and_never_give_up_and_a_success_resets():
    bf, req = gap_policy()
    waits = []
    now = 0.0
    for _ in range(4):
        bf.failed(now)
        step = bf.next_step(now, NOW_MS)
        assert isinstance(step, Wait)
        waits.append(step.seconds)
        now += step.seconds
    # Equal jitter of 0.1, 0.2, 0.4, 0.8 s: each within [d/2, d].
    assert [d / 2 <= w <= d for w, d in zip(waits, [0.1, 0.2, 0.4, 0.8], strict=True)] == [True] * 4
    # A usable reply resets the back-off: the next failure waits a first delay again.
    bf.judge(req, [item(105)], NOW_MS * 1000)
    bf.tracker.accept(105, t(105))
    req = bf.next_step(now, NOW_MS)
    assert isinstance(req, Request) and req.from_id == 106
    bf.failed(now)
    step = bf.next_step(now, NOW_MS)
    assert isinstance(step, Wait) and 0.05 <= step.seconds <= 0.1
    # A week of failures: the ids stay missing and are still asked for, at the capped delay.
    for _ in range(2000):
        now += 300.0
        bf.failed(now)
    assert bf.tracker.missing == [Missing(106, 109, t(105), t(110))]
    step = bf.next_step(now, NOW_MS)
    assert isinstance(step, Wait) and 0.5 <= step.seconds <= 1.0
    assert isinstance(bf.next_step(now + 1.0, NOW_MS), Request)


def test_backoff_delays_are_capped_jittered_and_never_zero():
    gen = backoff_delays(1.0, 60.0, random.Random(3))
    delays = list(itertools.islice(gen, 30))
    assert 0.5 <= delays[0] <= 1.0
    assert all(30.0 <= d <= 60.0 for d in delays[7:])
    # A sustained outage: attempts in 5 minutes stay far below Binance's 300.
    assert sum(1 for x in itertools.accumulate(delays) if x <= 300) < 15


REPLIES = ["ok", "fail", "short", "garbage", "other", "disorder"]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(30, 120),
    seen=st.sets(st.integers(1, 119)),
    holes=st.sets(st.integers(1, 118), max_size=20),
    replies=st.lists(st.sampled_from(REPLIES), max_size=300),
)
def test_any_interleaving_ends_with_every_id_stored_or_a_true_gap(n, seen, holes, replies):
    """The exchange has ids 0..n (``holes``: ids REST cannot serve); the stream delivered
    ``seen``; REST answers as ``replies`` says, in turn, then well. Whatever the order,
    backfill ends with every id stored exactly once or recorded as a gap, and a gap holds only
    ids REST truly cannot serve: failures, garbage and poisoned pages only delay."""
    holes = {h for h in holes if h < n}
    tr = IdTracker(0, t(0))
    stored, gaps = [0], set()
    for i in [*sorted(s for s in seen - holes if s <= n), n]:
        if tr.accept(i, t(i))[0] != Accept.DUP:
            stored.append(i)
    bf = policy(tr)
    bf.request_catchup()
    now, turn = 0.0, 0
    for _ in range(5000):
        step = bf.next_step(now, NOW_MS)
        if step is None:
            break
        if isinstance(step, Wait):
            now += step.seconds
            continue
        kind = replies[turn] if turn < len(replies) else "ok"
        turn += 1
        top = step.gap.last + 10 if step.gap else step.from_id + 9
        served = [item(i) for i in range(step.from_id, min(n, top) + 1) if i not in holes][:10]
        if kind == "short" and step.gap is not None:
            served = served[:3]
        elif kind == "garbage":
            served = [*served, {"id": "x"}, item(10**9)]
        elif kind == "other":
            served = [item(3_000_000_000 + i) for i in range(5)]
        elif kind == "disorder":
            served = served[::-1]
        v = None if kind == "fail" else bf.judge(step, served, NOW_MS * 1000)
        if v is None or not v.usable:
            bf.failed(now)
            now += 0.05
            continue
        assert v.refused == []  # every time in this exchange is right
        for m in v.gaps:
            ids_ = set(range(m.first, m.last + 1))
            assert gaps.isdisjoint(ids_)
            gaps |= ids_
        for f in v.store:
            if tr.accept(f.trade_id, f.trade_time)[0] != Accept.DUP:
                stored.append(f.trade_id)
    else:
        pytest.fail("backfill did not end")
    assert len(stored) == len(set(stored)), "an id was stored twice"
    assert set(stored).isdisjoint(gaps) and set(stored) | gaps == set(range(n + 1))
    assert gaps <= holes and holes.isdisjoint(stored)
