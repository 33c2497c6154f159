"""What to fetch from REST, what a reply means, and when to stop trying (pure: no I/O, no
clock of its own; times come in as arguments).

One ``SymbolBackfill`` per symbol wraps that symbol's ``IdTracker``:

    next_step(now) ──> Request(from_id, limit, ...) ──(service fetches)──> judge(reply) ──> Verdict
         │                                                        └─ failed(now) on an error
         └─> Wait(seconds) while backing off after failures, or None when there is nothing to do

A reply is trusted only as far as it fits: ids inside the requested range and strictly
increasing, times inside the neighbours' times (a REST reply carrying another symbol's trades,
or one far-off trade time, is quarantined instead of poisoning the tracker).

Ids become a recorded gap only when REST answers without them ("not served by REST"). REST
failing never does: Binance serves its trade history for years, so an outage, however long,
only delays the fill. The ids stay missing (in ``state/SYMBOL.json``, ``recorder status``, the
``rest_down`` metric) and are retried with capped back-off.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from recorder.frames import Frame, Kind, decode_rest_trade
from recorder.tracker import IdTracker, Missing

__all__ = [
    "NOT_SERVED",
    "REFUSED",
    "Request",
    "SymbolBackfill",
    "Verdict",
    "Wait",
    "backoff_delays",
]

NOT_SERVED = "not served by REST"
REFUSED = "served by REST with a time outside its neighbours' (quarantined)"


def backoff_delays(initial: float, cap: float, rng: random.Random) -> Iterator[float]:
    """Seconds to wait before each retry: exponential from ``initial``, capped at ``cap``, with
    "equal jitter" (half fixed, half random) so a fleet never retries in lockstep and a delay
    never collapses to zero. A fresh generator starts over, which is how retries reset."""
    d = initial
    while True:
        yield d / 2 + rng.uniform(0, d / 2)
        d = min(cap, d * 2)


@dataclass(frozen=True)
class Request:
    """Ask REST for ``limit`` trades from id ``from_id`` on. ``gap`` is the missing range
    being filled (None: catching up past the highest stored id). Trade times (UTC ms) must
    not go below ``lo_time`` (the neighbour before), must not pass the gap's ``before_time``
    for ids inside the gap, and never ``ceiling`` (now plus the allowed clock skew)."""

    symbol: str
    from_id: int
    limit: int
    gap: Missing | None
    lo_time: int
    ceiling: int

    @property
    def top_id(self) -> int:
        """The highest id a truthful reply can hold. REST answers ``fromId`` with the next ids
        it has, so past a hole in a gap the reply runs on to ``limit`` ids after the gap's end
        (ids the stream already delivered); for a catch-up nothing bounds it but the page."""
        page_end = self.from_id + self.limit - 1
        return page_end if self.gap is None else max(page_end, self.gap.last + self.limit)

    def hi_time(self, trade_id: int) -> int:
        g = self.gap
        if g is not None and trade_id <= g.last and g.after_time <= g.before_time:
            return min(g.before_time, self.ceiling)
        return self.ceiling


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Verdict:
    """What a reply means: ``store`` these trades (in id order), quarantine ``rejects``
    (raw item as bytes, reason), record ``gaps`` as not served by REST and ``refused`` as
    served but quarantined. ``usable`` is False when a non-empty reply held nothing we could
    trust: a failure."""

    store: list[Frame] = field(default_factory=list)
    rejects: list[tuple[bytes, str]] = field(default_factory=list)
    gaps: list[Missing] = field(default_factory=list)
    refused: list[Missing] = field(default_factory=list)
    usable: bool = True


class SymbolBackfill:
    """Backfill state of one symbol: its tracker, whether a catch-up past the highest stored
    id is due (after every start and reconnect), and the failure back-off (``delays``: a
    fresh generator after every usable reply)."""

    def __init__(
        self,
        symbol: str,
        tracker: IdTracker,
        *,
        limit: int,
        max_skew_ms: int,
        delays: Callable[[], Iterator[float]],
    ):
        self.symbol = symbol
        self.tracker = tracker
        self.limit = limit
        self.max_skew_ms = max_skew_ms
        self._new_delays = delays
        self._delays: Iterator[float] | None = None
        self.catchup = False
        self.retry_at = 0.0

    def request_catchup(self) -> None:
        if self.tracker.high is not None:
            self.catchup = True

    def next_step(self, now: float, now_ms: int) -> Request | Wait | None:
        """The next request to make (``now``: monotonic seconds; ``now_ms``: UTC ms)."""
        t = self.tracker
        gap = t.first_missing()
        if gap is None and not (self.catchup and t.high is not None):
            self.catchup = False
            return None
        if now < self.retry_at:
            return Wait(self.retry_at - now)
        ceiling = now_ms + self.max_skew_ms
        if gap is not None:
            # A bracket inverted by an older version's poisoned state bounds nothing.
            lo = gap.after_time if gap.after_time <= gap.before_time else 0
            return Request(self.symbol, gap.first, self.limit, gap, lo, ceiling)
        assert t.high is not None
        return Request(self.symbol, t.high + 1, self.limit, None, t.high_time, ceiling)

    def judge(self, req: Request, items: list[Any], recv_us: int) -> Verdict:
        """Sort a reply into trades to store, rejects, and ids REST does not have.

        Items outside the requested ids or their neighbours' times are quarantined one by one.
        A reply whose remaining trades are not in strictly increasing id (and time) order is
        not a truthful page at all: it is a failure, retried, because trusting its first id
        could declare ids lost that REST still has."""
        store: list[Frame] = []
        rejects: list[tuple[bytes, str]] = []
        top = req.top_id
        served: int | None = None  # the first id REST answered with, trusted or not
        for item in items:
            f = decode_rest_trade(item, req.symbol, recv_us)
            why = f.reason if f.kind is not Kind.TRADE else ""
            if not why and not req.from_id <= f.trade_id <= top:
                why = f"REST trade id {f.trade_id} outside the requested {req.from_id}..{top}"
            elif not why:
                served = f.trade_id if served is None else served
                if not req.lo_time <= f.trade_time <= req.hi_time(f.trade_id):
                    why = f"REST trade time {f.trade_time} outside its neighbours' times"
            if why:
                rejects.append((_raw(item), why))
            else:
                store.append(f)
        pairs = itertools.pairwise(store)
        if any(b.trade_id <= a.trade_id or b.trade_time < a.trade_time for a, b in pairs):
            why = "REST reply not in id and time order"
            return Verdict(rejects=[*rejects, (_raw(items), why)], usable=False)
        if items and not store:
            return Verdict(rejects=rejects, usable=False)
        self._delays, self.retry_at = None, 0.0
        gaps: list[Missing] = []
        refused: list[Missing] = []
        if req.gap is not None:
            g = req.gap
            first = store[0].trade_id if store else g.last + 1
            if first > g.first:
                # Below the first id REST answered with: not served. From there to the first
                # trade we stored: served, but refused (asking again would get them again).
                cut = min(first, g.last + 1) if served is None else min(served, first)
                gaps = self.tracker.give_up(g.first, cut - 1) if cut > g.first else []
                last = min(g.last, first - 1)
                refused = self.tracker.give_up(cut, last) if cut <= last else []
        elif len(items) < req.limit:
            self.catchup = False
        return Verdict(store, rejects, gaps, refused)

    def failed(self, now: float) -> None:
        """A request failed at ``now`` (monotonic s): retry after the next back-off delay.
        The missing ids stay missing however long REST fails."""
        if self._delays is None:
            self._delays = self._new_delays()
        self.retry_at = now + next(self._delays)


def _raw(item: Any) -> bytes:
    import orjson

    try:
        return orjson.dumps(item)
    except TypeError:
        return repr(item).encode()
