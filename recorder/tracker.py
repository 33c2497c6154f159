"""Per-symbol trade-id continuity (pure): what is stored, what is missing, what is a duplicate.

Binance trade ids step by exactly 1 per symbol (observed), so ``t == high + 1`` is the normal
case, ``t > high + 1`` opens a gap ``[high + 1, t - 1]`` to fetch, and ``t <= high`` is either a
fill of a known gap or a duplicate (make-before-break overlap, a REST page that overlaps the
stream) and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Accept", "IdTracker", "Missing"]


@dataclass(slots=True)
class Missing:
    """Ids ``first..last`` are not stored; trade times (UTC ms) bracket them."""

    first: int
    last: int
    after_time: int  # trade time of id first - 1
    before_time: int  # trade time of id last + 1

    def as_list(self) -> list[int]:
        return [self.first, self.last, self.after_time, self.before_time]


class Accept:
    NEW = 1  # beyond everything stored: store it
    FILL = 2  # fills a known gap: store it
    DUP = 0  # already stored: drop it


class IdTracker:
    """Continuity state of one symbol; ``high`` is the highest stored id (None: nothing yet)."""

    __slots__ = ("high", "high_time", "missing")

    def __init__(
        self, high: int | None = None, high_time: int = 0, missing: list[Missing] | None = None
    ):
        self.high = high
        self.high_time = high_time
        self.missing: list[Missing] = sorted(missing or [], key=lambda m: m.first)

    def accept(self, tid: int, ttime: int) -> tuple[int, Missing | None]:
        """Decide about trade ``tid`` (trade time ``ttime`` ms): (Accept.*, newly opened gap)."""
        high = self.high
        if high is None or tid == high + 1:
            self.high, self.high_time = tid, ttime
            return Accept.NEW, None
        if tid > high:
            gap = Missing(high + 1, tid - 1, self.high_time, ttime)
            self.missing.append(gap)
            self.high, self.high_time = tid, ttime
            return Accept.NEW, gap
        for i, m in enumerate(self.missing):
            if m.first <= tid <= m.last:
                self._cut(i, tid, tid, ttime)
                return Accept.FILL, None
        return Accept.DUP, None

    def give_up(self, first: int, last: int) -> list[Missing]:
        """Stop looking for ids ``first..last``; returns the missing pieces that were dropped."""
        dropped: list[Missing] = []
        i = 0
        while i < len(self.missing):
            m = self.missing[i]
            lo, hi = max(m.first, first), min(m.last, last)
            if lo > hi:
                i += 1
                continue
            dropped.append(Missing(lo, hi, m.after_time, m.before_time))
            i = self._cut(i, lo, hi)
        return dropped

    def _cut(self, i: int, lo: int, hi: int, ttime: int | None = None) -> int:
        """Remove ids lo..hi from missing[i]; returns the index to continue scanning at.
        ``ttime``: the trade time of a filled id, which becomes its neighbours' bracket."""
        m = self.missing[i]
        pieces = []
        if m.first < lo:
            before = m.before_time if ttime is None else ttime
            pieces.append(Missing(m.first, lo - 1, m.after_time, before))
        if hi < m.last:
            after = m.after_time if ttime is None else ttime
            pieces.append(Missing(hi + 1, m.last, after, m.before_time))
        self.missing[i : i + 1] = pieces
        return i + len(pieces)

    def first_missing(self) -> Missing | None:
        return self.missing[0] if self.missing else None
