"""The running recorder: one asyncio loop that reads the socket, and threads that touch disk.

    socket reader(s) ──decode, dedupe──> bounded queue ──> writer thread (append, fsync timer)
          │                                                    ▲
          └─ id jump / (re)connect ──> backfill (REST) ────────┘
    compactor: seals closed hours (writer thread), compacts them (its own thread)
    status: state/recorder.json, sd_notify STATUS/WATCHDOG

Connection life: a dead connection (no pong) or a dropped one is replaced after a jittered,
capped exponential backoff, and REST fills what was missed. Before the 24 h limit, and on
``serverShutdown``, the new connection is opened first and both are read (deduplicated by
trade id) until the new one provably covers the old one; then the old one is closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from recorder import exchange, layout
from recorder.compact import closed_hours, compact_hour
from recorder.config import RecorderConfig
from recorder.errors import ConfigError, RestUnavailable, StoreError
from recorder.exchange import RateLimited
from recorder.frames import Frame, Kind, decode_frame, decode_rest_trade, reject_line
from recorder.sdnotify import Notifier
from recorder.store import StoreLock, init_store, last_trade, read_missing
from recorder.tracker import Accept, IdTracker, Missing
from recorder.writer import StoreWriter

__all__ = ["Recorder", "backoff_delay", "run"]

log = logging.getLogger("recorder")

_STOP = object()


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Seconds before reconnect attempt ``attempt`` (1-based): exponential, capped, with
    "equal jitter" (half fixed, half random) so a fleet never retries in lockstep and the
    delay never collapses to zero."""
    d = min(cap, initial * 2 ** (attempt - 1))
    return d / 2 + rng.uniform(0, d / 2)


@dataclass(eq=False)
class _Conn:
    ws: ClientConnection
    opened: float  # monotonic
    number: int
    first_id: dict[str, int] = field(default_factory=dict)
    last_id: dict[str, int] = field(default_factory=dict)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def note(self, symbol: str, tid: int) -> None:
        self.first_id.setdefault(symbol, tid)
        if tid > self.last_id.get(symbol, -1):
            self.last_id[symbol] = tid


class Recorder:
    def __init__(
        self, cfg: RecorderConfig, notifier: Notifier | None = None, seed: int | None = None
    ):
        self.cfg = cfg
        self.root = cfg.data_dir
        self.symbols = frozenset(cfg.symbols)
        self.notifier = notifier or Notifier()
        self.stats: Counter[str] = Counter()
        self.trackers: dict[str, IdTracker] = {}
        self.writer = StoreWriter(self.root)
        self._rng = random.Random(seed)
        self._write_exec = ThreadPoolExecutor(1, thread_name_prefix="writer")
        self._compact_exec = ThreadPoolExecutor(1, thread_name_prefix="compact")
        self._queue: asyncio.Queue[Any] = asyncio.Queue(cfg.queue_max)
        self._stop = asyncio.Event()
        self._backfill_wake = asyncio.Event()
        self._catchup: set[str] = set()
        self._budget = exchange.RestBudget(cfg.rest_weight_per_minute)
        self._conns: list[_Conn] = []
        self._conn_count = 0
        self.last_activity = time.monotonic()
        self.started = time.time()
        self._ready = False
        # Writer thread only: receive times (µs) of trades appended since the last fsync, and
        # the latest 100,000 receive-to-fsync latencies.
        self._unsynced: list[int] = []
        self._latency_us: collections.deque[int] = collections.deque(maxlen=100_000)

    # ---- start and stop -------------------------------------------------------------

    def stop(self) -> None:
        """Ask the recorder to flush, close and return (safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Record until ``stop()``; raises RecorderError for a bad start (store, URLs)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._write_exec, init_store, self.root)
        with StoreLock(self.root):
            await loop.run_in_executor(self._write_exec, self._load_sync)
            await self._check_urls()
            writer = asyncio.create_task(self._writer_loop(), name="writer")
            helpers = [
                asyncio.create_task(self._sync_loop(), name="fsync"),
                asyncio.create_task(self._backfill_loop(), name="backfill"),
                asyncio.create_task(self._compact_loop(), name="compact"),
                asyncio.create_task(self._status_loop(), name="status"),
                asyncio.create_task(self._watchdog_loop(), name="watchdog"),
            ]
            conns = asyncio.create_task(self._connection_loop(), name="connections")
            try:
                await self._stop.wait()
            finally:
                self.notifier.stopping()
                conns.cancel()
                for t in helpers:
                    t.cancel()
                await asyncio.gather(conns, *helpers, return_exceptions=True)
                for c in list(self._conns):
                    await self._close(c)
                await self._queue.put(_STOP)
                await writer
                await loop.run_in_executor(self._write_exec, self.writer.close)
                await loop.run_in_executor(self._write_exec, self._write_status)
                self._write_exec.shutdown()
                self._compact_exec.shutdown(cancel_futures=True)
                log.info("stopped: %s", dict(self.stats))

    def _load_sync(self) -> None:
        for s in sorted(self.symbols):
            last = last_trade(self.root, s)
            missing = read_missing(self.root, s)
            high, high_time = last if last else (None, 0)
            self.trackers[s] = IdTracker(high, high_time, missing)
            if last:
                log.info("%s: last stored trade id %d; %d ranges missing", s, high, len(missing))

    async def _check_urls(self) -> None:
        try:
            ws = await exchange.open_stream(self.cfg.stream_url, self.cfg.open_timeout)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
            raise ConfigError(
                f"cannot open the stream at {self.cfg.ws_url} ({e or type(e).__name__}); "
                "check --ws-url and the network"
            ) from None
        try:
            await exchange.rest_ping(self.cfg.rest_url, self.cfg.rest_timeout)
        except RestUnavailable as e:
            await ws.close()
            raise ConfigError(f"{e}; check --rest-url and the network") from None
        self._adopt(ws)

    # ---- connections --------------------------------------------------------------

    def _adopt(self, ws: ClientConnection) -> _Conn:
        self._conn_count += 1
        self.stats["connections"] += 1
        conn = _Conn(ws, time.monotonic(), self._conn_count)
        conn.tasks = [
            asyncio.create_task(self._read(conn), name=f"read-{conn.number}"),
            asyncio.create_task(self._keepalive(conn), name=f"ping-{conn.number}"),
        ]
        self._conns.append(conn)
        log.info("connection %d open", conn.number)
        if not self._ready:
            self._ready = True
            self.notifier.ready(self._status_text())
        return conn

    async def _close(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(), 3)
        for t in conn.tasks:
            t.cancel()
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        conn.closed.set()

    async def _open_with_backoff(self, while_alive: _Conn | None = None) -> _Conn | None:
        """Open a new connection, retrying with backoff; None if stopping (or, when
        ``while_alive`` is given, if that connection died meanwhile)."""
        attempt = 0
        while not self._stop.is_set():
            if while_alive is not None and while_alive.closed.is_set():
                return None
            try:
                ws = await exchange.open_stream(self.cfg.stream_url, self.cfg.open_timeout)
                return self._adopt(ws)
            except (OSError, InvalidHandshake, TimeoutError) as e:
                attempt += 1
                self.stats["connect_failures"] += 1
                delay = backoff_delay(
                    attempt, self.cfg.backoff_initial, self.cfg.backoff_max, self._rng
                )
                log.warning(
                    "connect failed (%s); retry %d in %.1f s", e or type(e).__name__, attempt, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        return None

    async def _connection_loop(self) -> None:
        conn: _Conn | None = self._conns[0] if self._conns else None
        attempt = 0
        while not self._stop.is_set():
            if conn is None:
                attempt += 1
                delay = backoff_delay(
                    attempt, self.cfg.backoff_initial, self.cfg.backoff_max, self._rng
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                conn = await self._open_with_backoff()
                if conn is None:
                    return
            self._request_catchup()
            why = await self._wait_switch(conn)
            if why == "closed":
                self.stats["disconnects"] += 1
                log.warning("connection %d lost; reconnecting", conn.number)
                await self._close(conn)
                conn = None
                continue
            attempt = 0
            # Make before break: open the new one while the old one still streams.
            self.stats[f"switch_{why}"] += 1
            log.info("connection %d: %s; opening its successor first", conn.number, why)
            new = await self._open_with_backoff(while_alive=conn)
            if new is None:
                await self._close(conn)
                conn = None
                continue
            await self._overlap(conn, new)
            await self._close(conn)
            conn = new

    async def _wait_switch(self, conn: _Conn) -> str:
        age_left = self.cfg.max_connection_age - (time.monotonic() - conn.opened)
        waits = {
            asyncio.ensure_future(conn.closed.wait()): "closed",
            asyncio.ensure_future(conn.shutdown.wait()): "serverShutdown",
            asyncio.ensure_future(asyncio.sleep(max(0.0, age_left))): "maximum age",
        }
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in waits:
                f.cancel()
        return "closed" if conn.closed.is_set() else waits[done.pop()]

    def _covered(self, old: _Conn, new: _Conn) -> bool:
        """The new connection covers the old one when, for every symbol the new one has
        carried, the old one has delivered everything up to the new one's first trade."""
        return all(old.last_id.get(s, f - 1) >= f - 1 for s, f in new.first_id.items())

    async def _overlap(self, old: _Conn, new: _Conn) -> None:
        deadline = time.monotonic() + self.cfg.overlap_max
        quiet = time.monotonic() + min(self.cfg.overlap_max, 2 * self.cfg.ping_interval, 5.0)
        while time.monotonic() < deadline and not old.closed.is_set() and not self._stop.is_set():
            every = new.first_id.keys() >= self.symbols
            if self._covered(old, new) and (every or time.monotonic() >= quiet):
                break
            await asyncio.sleep(0.05)
        log.info(
            "connection %d replaces %d (covered: %s)",
            new.number,
            old.number,
            self._covered(old, new),
        )

    async def _keepalive(self, conn: _Conn) -> None:
        """Our own ping: a pong proves the connection alive even when no symbol trades."""
        while True:
            await asyncio.sleep(self.cfg.ping_interval)
            try:
                pong = await conn.ws.ping()
                await asyncio.wait_for(pong, self.cfg.ping_timeout)
            except TimeoutError:
                self.stats["dead_connections"] += 1
                log.warning(
                    "connection %d: no pong in %g s; dropping it",
                    conn.number,
                    self.cfg.ping_timeout,
                )
                conn.ws.transport.abort()
                return
            except ConnectionClosed:
                return
            self.last_activity = time.monotonic()

    async def _read(self, conn: _Conn) -> None:
        put = self._queue.put
        symbols = self.symbols
        try:
            while True:
                raw = await conn.ws.recv(decode=False)
                recv_us = time.time_ns() // 1000
                self.last_activity = time.monotonic()
                self.stats["frames"] += 1
                if isinstance(raw, str):  # pragma: no cover - recv(decode=False) gives bytes
                    raw = raw.encode()
                f = decode_frame(raw, recv_us, symbols)
                if f.kind is Kind.TRADE:
                    conn.note(f.symbol, f.trade_id)
                    for item in self._ingest(f):
                        await put(item)
                elif f.kind is Kind.SHUTDOWN:
                    self.stats["server_shutdowns"] += 1
                    conn.shutdown.set()
                elif f.kind is Kind.REPLY:
                    self.stats["replies"] += 1
                else:
                    key = "error_frames" if f.kind is Kind.ERROR else "rejects"
                    self.stats[key] += 1
                    if self.stats[key] <= 10 or self.stats[key] % 1000 == 0:
                        log.warning("%s #%d quarantined: %s", key, self.stats[key], f.reason)
                    await put(("R", reject_line(raw, recv_us, f.reason), recv_us / 1e6))
        except ConnectionClosed as e:
            log.info("connection %d closed: %s", conn.number, e)
        finally:
            conn.closed.set()

    def _ingest(self, f: Frame) -> list[tuple]:
        """Continuity check for one decoded trade; the queue items it produces."""
        tracker = self.trackers[f.symbol]
        verdict, gap = tracker.accept(f.trade_id, f.trade_time)
        if verdict == Accept.DUP:
            self.stats["duplicates"] += 1
            return []
        self.stats["trades"] += 1
        item = ("T", f.symbol, layout.hour_of(f.trade_time), f.line, f.recv_us)
        if gap is None:
            return [item]
        self.stats["gaps_detected"] += 1
        log.info("%s: ids %d..%d missing; fetching", f.symbol, gap.first, gap.last)
        self._backfill_wake.set()
        return [self._state_item(f.symbol), item]

    def _state_item(self, symbol: str) -> tuple:
        return ("S", symbol, {"missing": [m.as_list() for m in self.trackers[symbol].missing]})

    # ---- backfill -----------------------------------------------------------------

    def _request_catchup(self) -> None:
        self._catchup.update(s for s, t in self.trackers.items() if t.high is not None)
        self._backfill_wake.set()

    async def _backfill_loop(self) -> None:
        while True:
            await self._backfill_wake.wait()
            self._backfill_wake.clear()
            for s in sorted(self.symbols):
                await self._backfill(s)

    async def _backfill(self, symbol: str) -> None:
        tracker = self.trackers[symbol]
        failing_since: float | None = None
        failures = 0
        while not self._stop.is_set():
            gap = tracker.first_missing()
            if gap is not None:
                from_id = gap.first
            elif symbol in self._catchup and tracker.high is not None:
                from_id = tracker.high + 1
            else:
                self._catchup.discard(symbol)
                return
            await self._budget.acquire(exchange.HISTORICAL_TRADES_WEIGHT)
            try:
                items = await exchange.fetch_trades(
                    self.cfg.rest_url, symbol, from_id, self.cfg.rest_limit, self.cfg.rest_timeout
                )
            except RateLimited as e:
                self.stats["rest_rate_limited"] += 1
                log.warning("%s; pausing REST", e)
                self._budget.pause(e.retry_after)
                continue
            except RestUnavailable as e:
                self.stats["rest_failures"] += 1
                failures += 1
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= self.cfg.rest_give_up:
                    log.error("%s: %s; giving up after %.0f s", symbol, e, now - failing_since)
                    self._catchup.discard(symbol)
                    if gap is not None:
                        await self._give_up(
                            symbol, gap.first, tracker.missing[-1].last, "REST unavailable"
                        )
                    return
                delay = backoff_delay(
                    failures, self.cfg.backoff_initial, self.cfg.backoff_max, self._rng
                )
                log.warning("%s: %s; retrying in %.1f s", symbol, e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            failing_since, failures = None, 0
            self.stats["rest_requests"] += 1
            await self._store_rest(symbol, items)
            ids = [i.get("id") for i in items if isinstance(i, dict)]
            if gap is not None:
                first = min((i for i in ids if isinstance(i, int) and i >= gap.first), default=None)
                if first is None or first > gap.first:
                    # REST does not have these ids: gone on the exchange's side.
                    last = gap.last if first is None else min(gap.last, first - 1)
                    await self._give_up(symbol, gap.first, last, "not served by REST")
            elif len(items) < self.cfg.rest_limit:
                self._catchup.discard(symbol)

    async def _store_rest(self, symbol: str, items: list[Any]) -> None:
        recv_us = time.time_ns() // 1000
        before = len(self.trackers[symbol].missing)
        for item in items:
            f = decode_rest_trade(item, symbol, recv_us)
            if f.kind is Kind.TRADE:
                self.stats["backfilled"] += 1
                for q in self._ingest(f):
                    await self._queue.put(q)
            else:
                self.stats["rejects"] += 1
                await self._queue.put(
                    ("R", reject_line(repr(item).encode(), recv_us, f.reason), recv_us / 1e6)
                )
        if before or self.trackers[symbol].missing:
            await self._queue.put(self._state_item(symbol))

    async def _give_up(self, symbol: str, first: int, last: int, reason: str) -> None:
        dropped: list[Missing] = self.trackers[symbol].give_up(first, last)
        if not dropped:
            return
        now_ms = int(time.time() * 1000)
        recs = [
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
        ]
        self.stats["gaps_recorded"] += len(recs)
        for r in recs:
            log.error(
                "%s: ids %d..%d recorded as a gap (%s)", symbol, r["first_id"], r["last_id"], reason
            )
        await self._queue.put(("G", recs))
        await self._queue.put(self._state_item(symbol))

    # ---- disk ---------------------------------------------------------------------

    async def _writer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        q = self._queue
        while True:
            batch = [await q.get()]
            while len(batch) < 20_000 and not q.empty():
                batch.append(q.get_nowait())
            stop = batch[-1] is _STOP
            if stop:
                batch.pop()
            if batch:
                await loop.run_in_executor(self._write_exec, self._write_batch, batch)
            if stop:
                return

    def _write_batch(self, batch: list[tuple]) -> None:
        """Runs in the writer thread; ``stats["written"]`` is touched by this thread only."""
        trades: list[tuple[str, int, bytes]] = []
        self.stats["written"] += sum(1 for item in batch if item[0] == "T")
        w = self.writer
        unsynced = self._unsynced
        for item in batch:
            kind = item[0]
            if kind == "T":
                trades.append(item[1:4])
                unsynced.append(item[4])
                continue
            if trades:
                w.append(trades)
                trades = []
            if kind == "R":
                w.reject(item[1], item[2])
            elif kind == "S":
                w.write_state(item[1], item[2])
            elif kind == "G":
                w.sync()
                w.record_gaps(item[1])
        if trades:
            w.append(trades)

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.cfg.fsync_interval)
            await loop.run_in_executor(self._write_exec, self._sync)

    def _sync(self) -> None:
        """fsync (writer thread), then note each trade's receive-to-fsync latency."""
        self.writer.sync()
        if self._unsynced:
            now = time.time_ns() // 1000
            self._latency_us.extend(now - r for r in self._unsynced)
            self._unsynced.clear()

    def latency_ms(self) -> dict[str, float]:
        """Receive-to-fsync latency percentiles over the last 100,000 trades (ms)."""
        if not self._latency_us:
            return {}
        import statistics

        q = statistics.quantiles(self._latency_us, n=100, method="inclusive")
        return {
            "p50": round(q[49] / 1000, 2),
            "p99": round(q[98] / 1000, 2),
            "n": len(self._latency_us),
        }

    async def _compact_loop(self) -> None:
        loop = asyncio.get_running_loop()
        grace_ms = int(self.cfg.compact_grace * 1000)
        first = True
        while True:
            if not first:
                await asyncio.sleep(self.cfg.compact_interval)
            first = False
            now_ms = int(time.time() * 1000)
            dirs = await loop.run_in_executor(
                self._compact_exec, closed_hours, self.root, now_ms, grace_ms
            )
            for d in dirs:
                symbol, hour = layout.parse_hour_dir(d)
                await loop.run_in_executor(self._write_exec, self.writer.seal, symbol, hour)
                try:
                    res = await loop.run_in_executor(
                        self._compact_exec, compact_hour, self.root, d, False
                    )
                except StoreError as e:
                    self.stats["compaction_errors"] += 1
                    log.error("compaction of %s failed: %s", d, e)
                    continue
                self.stats["hours_compacted"] += 1
                log.info(
                    "compacted %s: %d trades from %d files",
                    d.relative_to(self.root),
                    res.rows,
                    res.ndjson_files,
                )

    # ---- status -------------------------------------------------------------------

    def _status_text(self) -> str:
        age = time.monotonic() - self.last_activity
        return (
            f"{len(self.symbols)} symbols, {self.stats['trades']} trades, "
            f"{len(self._conns)} connections, last frame {age:.1f} s ago, "
            f"gaps {self.stats['gaps_recorded']}, rejects {self.stats['rejects']}"
        )

    def _write_status(self) -> None:
        self.writer.write_state(
            "recorder",
            {
                "pid": os.getpid(),
                "started_at": self.started,
                "updated_at": time.time(),
                "connections_open": len(self._conns),
                "stats": dict(self.stats),
                "fsync_latency_ms": self.latency_ms(),
                "symbols": {
                    s: {
                        "high": t.high,
                        "high_time": t.high_time,
                        "missing": [m.as_list() for m in t.missing],
                    }
                    for s, t in self.trackers.items()
                },
            },
        )

    async def _status_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(self._write_exec, self._write_status)
            self.notifier.status(self._status_text())
            await asyncio.sleep(self.cfg.status_interval)

    async def _watchdog_loop(self) -> None:
        """WATCHDOG=1 only while frames or pongs keep arriving: a wedged loop or a silent
        socket stops the pings and systemd restarts us."""
        interval = self.notifier.watchdog_seconds
        if not interval:
            return
        while True:
            await asyncio.sleep(interval / 3)
            if time.monotonic() - self.last_activity < interval:
                self.notifier.watchdog()


def run(cfg: RecorderConfig) -> dict[str, int]:
    """Run the recorder in this process until SIGTERM/SIGINT; returns its counters."""

    async def main() -> dict[str, int]:
        rec = Recorder(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, rec.stop)
        await rec.run()
        return dict(rec.stats)

    return asyncio.run(main())
