"""The stream connections: one open at a time, two while switching (make before break).

A dropped or dead connection (no pong within ``ping_timeout``) is replaced after a delay from
an injected generator (``backfill.backoff_delays``); the generator starts over once a
connection has been healthy, i.e. stayed open for a keepalive interval, as websockets' own
``connect()`` iterator resets its back-off. Before Binance's 24 h limit, and on
``serverShutdown``, the successor is opened first and both are read (the service drops
duplicates by trade id) until the new one provably covers the old one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from recorder import exchange
from recorder.config import RecorderConfig

__all__ = ["Conn", "Connections"]

log = logging.getLogger("recorder")
_CONNECT_ERRORS = (OSError, InvalidHandshake, TimeoutError)


@dataclass(eq=False)
class Conn:
    ws: ClientConnection
    opened: float  # monotonic
    number: int
    first_id: dict[str, int] = field(default_factory=dict)
    last_id: dict[str, int] = field(default_factory=dict)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False  # closed by us for want of a pong
    tasks: list[asyncio.Task] = field(default_factory=list)

    def note(self, symbol: str, tid: int) -> None:
        self.first_id.setdefault(symbol, tid)
        if tid > self.last_id.get(symbol, -1):
            self.last_id[symbol] = tid


class Connections:
    """``on_frame(conn, raw, recv_us)`` handles every message; ``on_open()`` runs whenever
    a connection becomes the primary one (the service then catches up from REST)."""

    def __init__(
        self,
        cfg: RecorderConfig,
        stats: Counter[str],
        delays: Callable[[], Iterator[float]],
        on_frame: Callable[[Conn, bytes, int], Awaitable[None]],
        on_open: Callable[[], None],
    ):
        self.cfg = cfg
        self.stats = stats
        self._new_delays = delays
        self._on_frame = on_frame
        self._on_open = on_open
        self.open: list[Conn] = []
        self.count = 0
        self.last_activity = time.monotonic()
        # The latest reconnect delays slept, for diagnosis.
        self.delays_used: collections.deque[float] = collections.deque(maxlen=1000)

    async def open_first(self) -> Conn:
        """The first connection, with no retry: failing here is a configuration problem."""
        return self._adopt(await exchange.open_stream(self.cfg.stream_url, self.cfg.open_timeout))

    async def run(self) -> None:
        """Keep a connection open until cancelled."""
        conn: Conn | None = self.open[0] if self.open else None
        delays: Iterator[float] | None = None
        while True:
            if conn is None:
                delays = delays or self._new_delays()
                await self._sleep(next(delays))
                conn = await self._open_retrying(delays)
                assert conn is not None  # without ``while_alive`` it retries until it opens
            self._on_open()
            why = await self._wait_switch(conn)
            if time.monotonic() - conn.opened >= self.cfg.ping_interval:
                delays = None  # it was healthy: the next outage starts from a short delay
            if why == "closed":
                self.stats["disconnects"] += 1
                self.stats["reconnect_no_pong" if conn.dead else "reconnect_dropped"] += 1
                log.warning("connection %d lost; reconnecting", conn.number)
                await self._close(conn)
                conn = None
                continue
            self.stats[f"switch_{why}"] += 1
            log.info("connection %d: %s; opening its successor first", conn.number, why)
            new = await self._open_retrying(self._new_delays(), while_alive=conn)
            if new is not None:
                await self._overlap(conn, new)
            await self._close(conn)
            conn = new

    async def close_all(self) -> None:
        await asyncio.gather(*(self._close(c) for c in list(self.open)))

    async def _sleep(self, delay: float) -> None:
        self.delays_used.append(delay)
        await asyncio.sleep(delay)

    def _adopt(self, ws: ClientConnection) -> Conn:
        self.count += 1
        self.stats["connections"] += 1
        conn = Conn(ws, time.monotonic(), self.count)
        conn.tasks = [
            asyncio.create_task(self._read(conn), name=f"read-{conn.number}"),
            asyncio.create_task(self._keepalive(conn), name=f"ping-{conn.number}"),
        ]
        self.open.append(conn)
        log.info("connection %d open", conn.number)
        return conn

    async def _close(self, conn: Conn) -> None:
        if conn in self.open:
            self.open.remove(conn)
        for t in conn.tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(), 2)
        conn.ws.transport.abort()
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        conn.closed.set()

    async def _open_retrying(
        self, delays: Iterator[float], while_alive: Conn | None = None
    ) -> Conn | None:
        """Open a connection, retrying after each of ``delays``; None if ``while_alive`` is
        given and that connection died meanwhile (the caller then reconnects plainly)."""
        while while_alive is None or not while_alive.closed.is_set():
            try:
                ws = await exchange.open_stream(self.cfg.stream_url, self.cfg.open_timeout)
                return self._adopt(ws)
            except _CONNECT_ERRORS as e:
                self.stats["connect_failures"] += 1
                delay = next(delays)
                log.warning("connect failed (%s); retrying in %.1f s", e or type(e).__name__, delay)
                await self._sleep(delay)
        return None

    async def _wait_switch(self, conn: Conn) -> str:
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

    @staticmethod
    def covered(old: Conn, new: Conn) -> bool:
        """The new connection covers the old one when, for every symbol the new one has
        carried, the old one has delivered everything up to the new one's first trade."""
        return all(old.last_id.get(s, f - 1) >= f - 1 for s, f in new.first_id.items())

    async def _overlap(self, old: Conn, new: Conn) -> None:
        deadline = time.monotonic() + self.cfg.overlap_max
        quiet = time.monotonic() + min(self.cfg.overlap_max, 2 * self.cfg.ping_interval, 5.0)
        symbols = set(self.cfg.symbols)
        while time.monotonic() < deadline and not old.closed.is_set():
            if self.covered(old, new) and (
                new.first_id.keys() >= symbols or time.monotonic() >= quiet
            ):
                break
            await asyncio.sleep(0.05)
        log.info(
            "connection %d replaces %d (covered: %s)",
            new.number,
            old.number,
            self.covered(old, new),
        )

    async def _keepalive(self, conn: Conn) -> None:
        """Our own ping: a pong proves the connection alive even when no symbol trades."""
        while True:
            await asyncio.sleep(self.cfg.ping_interval)
            try:
                pong = await conn.ws.ping()
                await asyncio.wait_for(pong, self.cfg.ping_timeout)
            except TimeoutError:
                self.stats["dead_connections"] += 1
                conn.dead = True
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

    async def _read(self, conn: Conn) -> None:
        try:
            while True:
                raw = await conn.ws.recv(decode=False)
                self.last_activity = time.monotonic()
                self.stats["frames"] += 1
                if isinstance(raw, str):  # pragma: no cover - recv(decode=False) gives bytes
                    raw = raw.encode()
                await self._on_frame(conn, raw, time.time_ns() // 1000)
        except ConnectionClosed as e:
            log.info("connection %d closed: %s", conn.number, e)
        except Exception:  # a bug, not a network fault: say so, then reconnect
            log.exception("connection %d: reading failed", conn.number)
        finally:
            conn.closed.set()
