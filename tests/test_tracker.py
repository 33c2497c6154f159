"""Trade-id continuity: new, gap, fill, duplicate, give up."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from recorder.tracker import Accept, IdTracker, Missing


def test_gap_fill_and_duplicates():
    t = IdTracker(high=10, high_time=100)
    assert t.accept(11, 110) == (Accept.NEW, None)
    verdict, gap = t.accept(15, 150)
    assert (verdict, gap) == (Accept.NEW, Missing(12, 14, 110, 150))
    assert t.accept(13, 130) == (Accept.FILL, None)
    # The filled id's time brackets the pieces it leaves on either side.
    assert [m.as_list() for m in t.missing] == [[12, 12, 110, 130], [14, 14, 130, 150]]
    assert t.accept(13, 130) == (Accept.DUP, None)
    assert t.accept(15, 150) == (Accept.DUP, None)
    assert t.give_up(0, 100) == [Missing(12, 12, 110, 130), Missing(14, 14, 130, 150)]
    assert t.missing == []


@given(st.permutations(list(range(1, 60))), st.lists(st.integers(1, 59), max_size=30))
def test_any_order_with_duplicates_stores_each_id_once(order, dups):
    t = IdTracker(high=0)
    stored = [i for i in [*order, *dups] if t.accept(i, i)[0] != Accept.DUP]
    assert sorted(stored) == list(range(1, 60))
    assert t.missing == [] and t.high == 59
