"""Everything that arrives, stream or REST, on its way to the disk queue.

A frame is decoded (``frames``), checked for id continuity (``tracker``) and queued for the
writer (``sink``). An id jump, and every (re)connect, wakes the backfill loop, which asks each
symbol's ``SymbolBackfill`` what to fetch, fetches it over HTTP, and applies the verdict:
trades to store, items to quarantine, ids to record as gaps. REST is only the gap filler: when
it fails the stream goes on being recorded, and ``rest_down_since`` says since when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

from recorder import exchange
from recorder.backfill import NOT_SERVED, REFUSED, Request, SymbolBackfill, Wait
from recorder.config import HISTORICAL_TRADES_WEIGHT, RecorderConfig
from recorder.connections import Conn
from recorder.errors import RestUnavailable
from recorder.exchange import RateLimited
from recorder.frames import Frame, Kind, decode_frame, reject_line
from recorder.sink import DiskSink, GapItem, Item, RejectItem, StateItem, TradeItem
from recorder.store import last_trade, layout, read_missing
from recorder.tracker import Accept, IdTracker, Missing

__all__ = ["Ingest"]

log = logging.getLogger("recorder")


class Ingest:
    def __init__(
        self,
        cfg: RecorderConfig,
        stats: Counter[str],
        sink: DiskSink,
        delays: Callable[[], Iterator[float]],
    ):
        self.cfg = cfg
        self.symbols = frozenset(cfg.symbols)
        self.stats = stats
        self.sink = sink
        self._delays = delays
        self.backfills: dict[str, SymbolBackfill] = {}
        self.rest_status: Counter[str] = Counter()  # REST replies by HTTP status or failure kind
        self.rest_down_since: float | None = None  # UTC s of the first failure in a row
        self.rest = exchange.rest_client()  # closed by the service on stop
        self.skew_ms = int(cfg.max_clock_skew * 1000)
        self.wake = asyncio.Event()
        self._budget = exchange.RestBudget(cfg.rest_weight_per_minute)
        self._put = sink.queue.put  # the hot path: one await per trade, not two

    def load(self) -> None:
        for s in sorted(self.symbols):
            last = last_trade(self.cfg.data_dir, s)
            high, high_time = last if last else (None, 0)
            tracker = IdTracker(high, high_time, read_missing(self.cfg.data_dir, s))
            self.backfills[s] = SymbolBackfill(
                s,
                tracker,
                limit=self.cfg.rest_limit,
                max_skew_ms=self.skew_ms,
                delays=self._delays,
            )
            if last:
                log.info("%s: last stored id %d; %d ranges missing", s, high, len(tracker.missing))

    async def on_frame(self, conn: Conn, raw: bytes, recv_us: int) -> None:
        f = decode_frame(raw, recv_us, self.symbols, self.skew_ms)
        if f.kind is Kind.TRADE:
            conn.note(f.symbol, f.trade_id)
            for item in self._ingest(f):
                await self._put(item)
        elif f.kind is Kind.SHUTDOWN:
            self.stats["server_shutdowns"] += 1
            conn.shutdown.set()
        elif f.kind is Kind.REPLY:
            self.stats["replies"] += 1
        else:
            await self._reject(raw, recv_us, f.reason, f.kind is Kind.ERROR)

    async def _reject(self, raw: bytes, recv_us: int, reason: str, error: bool = False) -> None:
        key = "error_frames" if error else "rejects"
        self.stats[key] += 1
        if self.stats[key] <= 10 or self.stats[key] % 1000 == 0:
            log.warning("%s #%d quarantined: %s", key, self.stats[key], reason)
        await self._put(RejectItem(reject_line(raw, recv_us, reason), recv_us / 1e6))

    def _ingest(self, f: Frame) -> list[Item]:
        """Continuity check for one decoded trade; the queue items it produces."""
        tracker = self.backfills[f.symbol].tracker
        verdict, gap = tracker.accept(f.trade_id, f.trade_time)
        if verdict == Accept.DUP:
            self.stats["duplicates"] += 1
            return []
        self.stats["trades"] += 1
        item = TradeItem(f.symbol, layout.hour_of(f.trade_time), f.line, f.recv_us)
        if gap is None:
            return [item]
        self.stats["gaps_detected"] += 1
        log.info("%s: ids %d..%d missing; fetching", f.symbol, gap.first, gap.last)
        self.wake.set()
        return [self._state_item(f.symbol), item]

    def _state_item(self, symbol: str) -> StateItem:
        missing = self.backfills[symbol].tracker.missing
        return StateItem(symbol, {"missing": [m.as_list() for m in missing]})

    def catchup(self) -> None:
        for b in self.backfills.values():
            b.request_catchup()
        self.wake.set()

    async def backfill_loop(self) -> None:
        while True:
            waits: list[float] = []
            busy = False
            for s in sorted(self.backfills):
                step = self.backfills[s].next_step(time.monotonic(), int(time.time() * 1000))
                if isinstance(step, Wait):
                    waits.append(step.seconds)
                elif step is not None:
                    busy = True
                    await self._fetch(self.backfills[s], step)
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), min(waits, default=None))
                self.wake.clear()

    async def _fetch(self, bf: SymbolBackfill, req: Request) -> None:
        await self._budget.acquire(HISTORICAL_TRADES_WEIGHT)
        cfg = self.cfg
        try:
            items = await exchange.fetch_trades(
                self.rest, cfg.rest_url, req.symbol, req.from_id, req.limit, cfg.rest_timeout
            )
        except RestUnavailable as e:
            self._rest_failed(e)
            if isinstance(e, RateLimited):
                self.stats["rest_rate_limited"] += 1
                self._budget.pause(e.retry_after)
            else:
                bf.failed(time.monotonic())
            return
        recv_us = time.time_ns() // 1000
        verdict = bf.judge(req, items, recv_us)
        for raw, why in verdict.rejects:
            await self._reject(raw, recv_us, why)
        if not verdict.usable:
            self._rest_failed(RestUnavailable(f"REST {req.symbol}: no usable trade", "invalid"))
            bf.failed(time.monotonic())
            return
        self.rest_status["200"] += 1
        self.stats["rest_requests"] += 1
        if self.rest_down_since is not None:
            log.warning("REST answers again")
            self.rest_down_since = None
        await self._gave_up(req.symbol, verdict.gaps, NOT_SERVED)
        await self._gave_up(req.symbol, verdict.refused, REFUSED)
        for f in verdict.store:
            queued = self._ingest(f)
            self.stats["backfilled"] += bool(queued)  # a duplicate was not backfilled
            for item in queued:
                await self._put(item)
        await self._put(self._state_item(req.symbol))

    def _rest_failed(self, e: RestUnavailable) -> None:
        self.rest_status[e.status] += 1
        self.stats["rest_failures"] += 1
        if self.rest_down_since is None:
            self.rest_down_since = time.time()
        log.warning("%s; backfill retries", e)

    async def _gave_up(self, symbol: str, dropped: list[Missing], reason: str) -> None:
        if not dropped:
            return
        now_ms = int(time.time() * 1000)
        recs = tuple(
            {
                "symbol": symbol,
                "first_id": m.first,
                "last_id": m.last,
                "after_time": m.after_time,
                "before_time": m.before_time,
                "reason": reason,
                "recorded_at": now_ms,
            }
            for m in dropped
        )
        self.stats["gaps_recorded"] += len(recs)
        for m in dropped:
            log.error("%s: ids %d..%d recorded as a gap (%s)", symbol, m.first, m.last, reason)
        await self._put(GapItem(recs))
        await self._put(self._state_item(symbol))
