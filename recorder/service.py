"""The running recorder: wires the parts together and owns the one way to stop.

    connections ──frames──> ingest (decode, dedupe by id) ──> DiskSink ──> writer thread
         │ reconnect / id jump                                   ▲
         └──────────> backfill loop (SymbolBackfill + REST) ─────┘
    housekeeping: compaction, uploads (a child process), status file + systemd
                  STATUS/WATCHDOG, store check

Every task is supervised: one that fails (a disk error, the store removed) stops the recorder
with an error instead of leaving it half alive. ``stop()`` (SIGTERM, SIGINT) ends ``run`` in a
few seconds whatever the network, REST or disk are doing: each wait on that path has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from websockets.exceptions import InvalidHandshake, InvalidURI

from recorder.backfill import backoff_delays
from recorder.config import RecorderConfig
from recorder.connections import Connections
from recorder.errors import ConfigError, RecorderError
from recorder.housekeeping import Housekeeping
from recorder.ingest import Ingest
from recorder.metrics import RecorderMetrics, parse_addr
from recorder.sdnotify import Notifier
from recorder.sink import DiskSink
from recorder.store import init_store
from recorder.store.lock import StoreLock
from recorder.tracker import IdTracker
from recorder.upload import check_destination
from recorder.writer import StoreWriter

__all__ = ["Recorder", "run"]

log = logging.getLogger("recorder")
# Seconds the shutdown path gives each step: closing sockets, then draining the queue to disk.
_CLOSE_TIMEOUT, _DRAIN_TIMEOUT = 2.0, 1.5


class Recorder:
    def __init__(
        self, cfg: RecorderConfig, notifier: Notifier | None = None, seed: int | None = None
    ):
        self.cfg = cfg
        self.root = cfg.data_dir
        self.symbols = frozenset(cfg.symbols)
        self.notifier = notifier or Notifier()
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self.metrics = RecorderMetrics(self)
        self.sink = DiskSink(StoreWriter(self.root), cfg.queue_max, self.metrics.observe_latency)
        self.ingest = Ingest(cfg, self.stats, self.sink, self._delays)
        self.conns = Connections(
            cfg, self.stats, self._delays, self.ingest.on_frame, self.ingest.catchup
        )
        self._stop = asyncio.Event()
        self.started = time.time()

    @property
    def trackers(self) -> dict[str, IdTracker]:
        return {s: b.tracker for s, b in self.ingest.backfills.items()}

    def _delays(self):
        return backoff_delays(self.cfg.backoff_initial, self.cfg.backoff_max, self._rng)

    def stop(self) -> None:
        """Ask the recorder to flush, close and return (safe from a signal handler)."""
        self._stop.set()

    # ---- start, supervise, stop -------------------------------------------------------

    async def run(self) -> None:
        """Record until ``stop()``. RecorderError for a bad start (store, URLs, a stream that
        cannot be opened) and for a fatal fault while running (disk, store removed). A stop
        during the start (a stream that takes its --open-timeout to answer) returns at once."""
        rest_host = _check_url(self.cfg.rest_url, ("http", "https"), "--rest-url")
        _check_url(self.cfg.ws_url, ("ws", "wss"), "--ws-url")
        if self.cfg.metrics_addr:
            parse_addr(self.cfg.metrics_addr)
        if self.cfg.upload_to:  # well formed; the server is first asked in the background
            check_destination(self.cfg.upload_to, self.cfg.endpoint_url)
        await self.sink.call(init_store, self.root)
        with StoreLock(self.root) as lock:
            await self.sink.call(self.ingest.load)
            if not await self._unless_stopped(self._open(rest_host)):
                await self.conns.close_all()
                log.info("stopped while starting")
                return
            house = Housekeeping(self, lock)
            if self.cfg.metrics_addr:
                self.metrics.serve(self.cfg.metrics_addr)
            self.notifier.ready(house.status_text())
            tasks = [
                asyncio.create_task(coro, name=name)
                for name, coro in [
                    ("writer", self.sink.run()),
                    ("fsync", self.sink.sync_loop(self.cfg.fsync_interval)),
                    ("connections", self.conns.run()),
                    ("backfill", self.ingest.backfill_loop()),
                    *house.tasks(),
                ]
            ]
            stop = asyncio.create_task(self._stop.wait())
            try:
                done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                await self._shutdown(tasks, house)
            failed = next((t for t in tasks if t in done), None)
            if failed is not None:
                raise _fatal(failed)

    async def _open(self, rest_host: str) -> None:
        """The first connection, then the REST host's name (REST itself may be down)."""
        try:
            await self.conns.open_first()
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
            raise ConfigError(
                f"cannot open the stream at {self.cfg.ws_url} ({e or type(e).__name__}); "
                "check --ws-url and the network"
            ) from None
        await _resolve(rest_host, "--rest-url")

    async def _unless_stopped(self, step: Coroutine[Any, Any, None]) -> bool:
        """Run a start-up step; False (the step cancelled) if ``stop()`` came first."""
        task = asyncio.create_task(step)
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if task.cancelled() or self._stop.is_set():
            return False
        if task.exception() is not None:
            await self.conns.close_all()
            raise task.exception()  # type: ignore[misc]
        return True

    async def _shutdown(self, tasks: list[asyncio.Task], house: Housekeeping) -> None:
        self.notifier.stopping()
        writer, rest = tasks[0], tasks[1:]
        for t in rest:
            t.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await asyncio.gather(*rest, self.conns.close_all(), return_exceptions=True)
                await self.ingest.rest.aclose()
        if not await self.sink.close(_DRAIN_TIMEOUT):
            why = "after a failed write" if self.sink.failed else "the disk too slow"
            log.error(
                "stopped %s: %d queued items not written; a restart backfills them",
                why,
                self.sink.queue.qsize(),
            )
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        house.write_status_now()
        self.metrics.close()
        log.info("stopped: %s", dict(self.stats))


def _check_url(url: str, schemes: tuple[str, ...], option: str) -> str:
    """The host of ``url``; ConfigError unless it is a well-formed URL of ``schemes``."""
    try:
        u = urllib.parse.urlsplit(url)
        _ = u.port  # ValueError for a port that is not a number in range
        host = u.hostname if u.scheme in schemes else None
    except ValueError:
        host = None
    if not host:
        raise ConfigError(
            f"{option} {url!r} is not a {'/'.join(schemes)} URL; give e.g. {schemes[-1]}://host"
        )
    return host


async def _resolve(host: str, option: str) -> None:
    """ConfigError if ``host`` does not exist (a typo); a lookup that fails for now (DNS
    down) is only a warning: REST is retried like any other outage."""
    try:
        async with asyncio.timeout(10):
            await asyncio.get_running_loop().getaddrinfo(host, None)
    except socket.gaierror as e:
        if e.errno == socket.EAI_NONAME:
            raise ConfigError(f"{option} host {host!r} does not exist; check {option}") from None
        log.warning("%s host %r cannot be looked up now (%s); backfill retries", option, host, e)
    except (OSError, TimeoutError) as e:
        log.warning("%s host %r cannot be looked up now (%s); backfill retries", option, host, e)


def _fatal(task: asyncio.Task) -> RecorderError:
    exc = task.exception() if not task.cancelled() else None
    if isinstance(exc, RecorderError):
        log.error("%s", exc)
        return exc
    log.error("task %s ended unexpectedly", task.get_name(), exc_info=exc)
    return RecorderError(f"internal task {task.get_name()} ended ({exc!r}); see the log")


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
