"""Following the store while the recorder writes it, on the exchange's clock.

The store is read through the batch engine's reader (``engine/scan.py``; a ``TailCache``
parses only the lines appended to the open hour since the last look) and the windows are
built by the batch window code, so a window followed live is the window a rerun builds. A
window ``[s, s + every)`` closes when the exchange's clock passes ``s + every + grace``; that
clock is the latest trade time in the store, advanced while the market is quiet by the wall
clock minus the usual receive-time offset the recorder stored, so a replay of old trades at
any speed behaves like live.

The clock is read before the store is, so a trade on disk when a window closes is in it,
however long the read takes. Known limit: a trade that reaches the store after its window
closed (a backfill slower than ``grace``, or a recorder held up for longer than ``grace``
while the wall clock runs on) is in the batch rerun but not in the window followed live.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from engine.scan import TailCache, open_store
from engine.windows import build_windows, id_gaps, mark_gaps, window_features

__all__ = ["StoreFollower"]

_HOUR_MS = 3_600_000
_LOOK_MS = 3 * _HOUR_MS  # trades read ahead of the next window per look at the store


class StoreFollower:
    """The windows of ``symbol`` (``every_ms`` long) in the store at ``root``, each handed
    over once closed. ``clock`` gives the wall time in seconds (injectable for tests)."""

    def __init__(
        self,
        root: Path,
        symbol: str,
        every_ms: int,
        grace_ms: int,
        clock: Callable[[], float] = time.time,
    ):
        self.index = open_store(root, symbol)
        self.index.tail = TailCache()
        self.every = every_ms
        self.grace = grace_ms
        self.next_start = 0  # start (UTC ms) of the next window to hand over
        self._prev: tuple[int, int] | None = None  # (id, UTC ms) of the last trade before it
        self._clock = clock

    @property
    def recv_offset_ms(self) -> int | None:
        """The usual receive time minus trade time (ms) of what the recorder is writing now;
        None when nothing is being written."""
        return self.index.tail.recv_offset_ms if self.index.tail else None

    def now(self, latest_ms: int | None, wall: float) -> int:
        """The exchange's clock (UTC ms), given the latest trade time seen (None: none) and
        the wall time (seconds) read before the store was."""
        offset = self.recv_offset_ms
        if offset is None:  # nothing is being written: time stands at the last trade
            return latest_ms or 0
        return max(int(wall * 1000) - offset, latest_ms or 0)

    def closed_wall_ms(self, start_ms: int) -> int | None:
        """Wall time (UTC ms) at which the window starting at ``start_ms`` closed, as the
        recorder saw it; None when nothing is being written."""
        offset = self.recv_offset_ms
        return None if offset is None else start_ms + self.every + self.grace + offset

    def first_open(self) -> int:
        """Start (UTC ms) of the first window the exchange's clock has not closed yet."""
        last = self.index.last_hour * _HOUR_MS
        wall = self._clock()  # before the store, as in ``closed``
        t = self.index.load(last, last + 2 * _HOUR_MS)
        latest = int(t["trade_time"].max().timestamp() * 1000) if t.height else None  # type: ignore[union-attr]
        return (self.now(latest, wall) - self.grace) // self.every * self.every

    def start(self, start_ms: int) -> pl.DataFrame | None:
        """Follow from the window starting at ``start_ms`` (a multiple of ``every``); returns
        the windows of the store before it, or None if the store begins there or later."""
        self.next_start = start_ms
        first_ms = self.index.first_hour * _HOUR_MS
        if start_ms <= first_ms:
            return None
        before = self.index.load(max(first_ms, start_ms - 24 * _HOUR_MS), start_ms)
        self._prev = _last_trade(before)
        return build_windows(self.index, [self.every], None, start_ms)[self.every]

    def closed(self) -> Iterator[tuple[int, pl.DataFrame]]:
        """Each window closed since the last look, oldest first: (its start in UTC ms, its
        one row of ``window_features`` with ``gap``). Ends at the first window still open. A
        window counts as handed over when the next one is asked for (``next_start`` moves
        on), so a caller that stops midway leaves the window it did not finish."""
        while True:
            lo = self.next_start
            # The clock is read before the store: a trade written while the store is read
            # (a slow read, a busy machine) may be missing from ``trades``, so a clock read
            # after it could close that trade's window without it.
            wall = self._clock()
            trades = self.index.load(lo, lo + _LOOK_MS)
            latest = int(trades["trade_time"][-1].timestamp() * 1000) if trades.height else None
            now = self.now(latest, wall)
            gaps = id_gaps(trades, self._prev) + self.index.recorded_gaps()
            # A window is finished with the trades up to its close (for id continuity), so
            # only windows whose close lies inside what was read are done from this read.
            limit = min(now, lo + _LOOK_MS)
            done = 0
            while self.next_start + self.every + self.grace <= limit:
                s0, s1 = self.next_start, self.next_start + self.every
                yield s0, mark_gaps(window_features(trades, self.every, s0, s1), self.every, gaps)
                inside = trades.filter(pl.col("trade_time").dt.epoch("ms") < s1)
                self._prev = _last_trade(inside) or self._prev
                self.next_start = s1
                done += 1
            if done == 0 or now < lo + _LOOK_MS:
                return


def _last_trade(trades: pl.DataFrame) -> tuple[int, int] | None:
    """(id, UTC ms) of the last of ``trades`` (sorted by time, then id); None if empty."""
    if not trades.height:
        return None
    last = trades.select(pl.col("trade_id").last(), pl.col("trade_time").last().dt.epoch("ms")).row(
        0
    )
    return int(last[0]), int(last[1])
